"""ament_python packaging of dsformer_ros: the runtime, the training tools and the ROS data files."""
from glob import glob
from pathlib import Path

from setuptools import find_packages, setup  # noqa: I001 (setuptools first: it provides distutils)
from distutils.command.install_data import install_data

PACKAGE = "dsformer_ros"


class InstallData(install_data):
    """data_files, less those bound for the folder the entry points go to (colcon: lib/dsformer_ros, setup.cfg).

    There the real `vpr_node` entry point already stands; scripts/vpr_node is only for pip, whose wheels put the
    entry points into bin/.
    """

    def finalize_options(self) -> None:
        super().finalize_options()
        scripts_dir = Path(self.get_finalized_command("install").install_scripts).resolve()
        self.data_files = [
            (folder, files) for folder, files in self.data_files
            if Path(self.install_dir, folder).resolve() != scripts_dir
        ]


setup(
    name=PACKAGE,
    version="0.1.0",
    description="DSFormer visual place recognition for ROS 2",
    python_requires=">=3.10",
    packages=find_packages(include=[PACKAGE, f"{PACKAGE}.*", "training", "training.*"]),
    package_data={"training": ["configs/*.yaml"]},
    data_files=[
        ("share/ament_index/resource_index/packages", [f"resource/{PACKAGE}"]),
        (f"share/{PACKAGE}", ["package.xml"]),
        (f"share/{PACKAGE}/launch", glob("launch/*.launch.py")),
        (f"share/{PACKAGE}/config", glob("config/*.yaml")),
        (f"lib/{PACKAGE}", ["scripts/vpr_node"]),
    ],
    cmdclass={"install_data": InstallData},
    zip_safe=False,
    entry_points={
        "console_scripts": [
            "dsformer-vpr = training.cli:main",
            "vpr_node = dsformer_ros.ros.main:main",
        ],
    },
)
