"""Maps the top-level folders core/, formats/ and plugins/ into the ``ptqconv`` namespace."""
from setuptools import find_packages, setup

FOLDERS = {"ptqconv": "ptqconv", "ptqconv.core": "core", "ptqconv.formats": "formats",
           "ptqconv.plugins": "plugins"}

packages, package_dir = [], {}
for namespace, folder in FOLDERS.items():
    package_dir[namespace] = folder
    packages.append(namespace)
    packages += [f"{namespace}.{sub}" for sub in find_packages(folder)]

setup(packages=packages, package_dir=package_dir)
