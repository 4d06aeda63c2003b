"""Metadata is in setup.cfg; this file only lists packages, because the twisted.plugins
drop-in lives at the top level of the checkout, outside src/, and has no __init__.py."""

from setuptools import find_packages, setup

packages = find_packages("src") + ["twisted.plugins"]
package_dir = {"": "src", "twisted.plugins": "twisted/plugins"}

setup(packages=packages, package_dir=package_dir)
