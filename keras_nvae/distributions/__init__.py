"""Probability distributions of NVAE: latent Normals and image likelihoods.

`normal` holds the latent distributions; `logistic_mixture` and
`likelihoods` the decoder likelihoods (`image` what they share). The public
names are importable from here.
"""

from keras_nvae.distributions.likelihoods import NormalDecoder
from keras_nvae.distributions.likelihoods import bernoulli_decoder
from keras_nvae.distributions.likelihoods import decoder_num_channels
from keras_nvae.distributions.likelihoods import make_decoder_distribution
from keras_nvae.distributions.likelihoods import nats_to_bits_per_dim
from keras_nvae.distributions.logistic_mixture import DiscretizedMixtureLogistics
from keras_nvae.distributions.logistic_mixture import LOG_SCALE_MIN
from keras_nvae.distributions.logistic_mixture import UNIFORM_EPS
from keras_nvae.distributions.normal import SIGMA_FLOOR
from keras_nvae.distributions.normal import SOFT_CLAMP_BOUND
from keras_nvae.distributions.normal import normal_from_params
from keras_nvae.distributions.normal import residual_normal
from keras_nvae.distributions.normal import soft_clamp
from keras_nvae.distributions.normal import split_normal_params
from keras_nvae.distributions.normal import standard_normal_prior
