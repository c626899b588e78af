"""Keras 3 layers of the labels-to-image model, one per file (backend-agnostic)."""
from lab2im.layers.base import RandomLayer
from lab2im.layers.bias_field import RandomBiasField
from lab2im.layers.convert_labels import ConvertLabels, OneHotLabels
from lab2im.layers.gmm import SampleConditionalGMM
from lab2im.layers.intensity import IntensityAugmentation
from lab2im.layers.random_crop import RandomCrop
from lab2im.layers.random_flip import RandomFlip
from lab2im.layers.random_morphology import RandomLabelMorphology
from lab2im.layers.random_partition import RandomPartition
from lab2im.layers.resolution import RandomBlur, SimulateResolution
from lab2im.layers.spatial_deformation import RandomSpatialDeformation

__all__ = [
    "RandomLayer", "RandomSpatialDeformation", "RandomCrop", "RandomFlip", "RandomLabelMorphology", "RandomPartition",
    "SampleConditionalGMM", "RandomBiasField", "SimulateResolution", "RandomBlur", "IntensityAugmentation", "ConvertLabels", "OneHotLabels",
]
