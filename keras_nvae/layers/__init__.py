"""Keras layers of NVAE."""

from keras_nvae.layers.cell_ops import BNSwishConv, InvertedResidual
from keras_nvae.layers.combiners import DecoderCombiner, EncoderCombiner
from keras_nvae.layers.conv import Conv2D
from keras_nvae.layers.initializers import FanInUniform, HostUniform
from keras_nvae.layers.normalization import BatchNorm
from keras_nvae.layers.residual_cell import ResidualCell
from keras_nvae.layers.skips import FactorizedReduce, UpsampleSkip
from keras_nvae.layers.squeeze_excitation import SqueezeExcitation
