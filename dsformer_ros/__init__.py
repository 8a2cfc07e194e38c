"""dsformer_ros: DSFormer visual place recognition for ROS 2 robots (runtime library; ROS adapters import rclpy lazily)."""
from dsformer_ros.dsformer import DSFormer, ModelConfig, build_model, preset
from dsformer_ros.extractor import DescriptorExtractor
from dsformer_ros.loading import load_model, resolve_device
from dsformer_ros.preprocess import PreprocessConfig, preprocess

__all__ = [
    "DSFormer",
    "DescriptorExtractor",
    "ModelConfig",
    "PreprocessConfig",
    "build_model",
    "load_model",
    "preprocess",
    "preset",
    "resolve_device",
]
__version__ = "0.1.0"
