"""ament_python packaging of dsformer_ros: the runtime, the training tools and the ROS data files."""
from glob import glob

from setuptools import find_packages, setup

PACKAGE = "dsformer_ros"

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
    # CUDA machines: pip install .[gpu] (or -r requirements-gpu.txt) for the tensorrt backend
    extras_require={"gpu": ["tensorrt-cu13==10.16.1.11"]},
    zip_safe=False,
    entry_points={
        "console_scripts": [
            "dsformer-vpr = training.cli:main",
            "vpr_node = dsformer_ros.ros.main:main",
        ],
    },
)
