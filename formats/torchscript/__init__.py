"""The TorchScript format plugin: reader ``torchscript`` (.pt/.pth) driven by the pnnx executable."""
