"""The recipes of NVAE's towers: which cells, how wide, in what order.

Widths double at every down-sampling (pre-processing blocks, then encoder
scales) and halve again on the way up, as in the official code. Scales are
numbered from the highest resolution in the encoder and from the top (the
lowest resolution) in the decoder.
"""

from keras_nvae.layers.latent_group import LatentGroup
from keras_nvae.layers.residual_cell import ResidualCell

CHANNEL_MULT = 2


def residual_cell(config, filters, cell_type, name):
    """A residual cell of `cell_type` with the configuration's recipe."""
    return ResidualCell(
        filters,
        cell_type,
        config.architecture[cell_type],
        config.use_se,
        config.remat_policy != "none",
        name=name,
    )


def encoder_mult(config, scale):
    """Channel multiplier of encoder scale `scale` (0: highest resolution)."""
    return CHANNEL_MULT ** (config.num_preprocess_blocks + scale)


def decoder_mult(config, scale):
    """Channel multiplier of decoder scale `scale` (0: the top scale)."""
    return encoder_mult(config, config.num_latent_scales - 1 - scale)


def pre_process_cells(config):
    """The cells between the stem and the first latent scale."""
    c = config
    cells = []
    for block in range(c.num_preprocess_blocks):
        mult = CHANNEL_MULT**block
        for cell in range(c.num_preprocess_cells):
            if cell == c.num_preprocess_cells - 1:
                filters, cell_type = CHANNEL_MULT * c.num_channels_enc * mult, "down_pre"
            else:
                filters, cell_type = c.num_channels_enc * mult, "normal_pre"
            cells.append(residual_cell(c, filters, cell_type, f"pre_process_{len(cells)}"))
    return cells


def encoder_down_cells(config):
    """One down-sampling cell between consecutive encoder scales."""
    return [
        residual_cell(
            config,
            CHANNEL_MULT * config.num_channels_enc * encoder_mult(config, scale),
            "down_enc",
            f"encoder_down_{scale}",
        )
        for scale in range(config.num_latent_scales - 1)
    ]


def latent_groups(config):
    """Every latent group, decoder order (the top group first)."""
    c = config
    groups = []
    for scale, num_groups in enumerate(c.decoder_groups_per_scale):
        mult = decoder_mult(c, scale)
        for _ in range(num_groups):
            groups.append(
                LatentGroup(
                    encoder_filters=c.num_channels_enc * mult,
                    decoder_filters=c.num_channels_dec * mult,
                    num_latents=c.num_latent_per_group,
                    is_top=not groups,
                    num_encoder_cells=c.num_cell_per_cond_enc,
                    num_decoder_cells=c.num_cell_per_cond_dec,
                    encoder_cell_ops=c.architecture["normal_enc"],
                    decoder_cell_ops=c.architecture["normal_dec"],
                    num_flows=c.num_flows,
                    use_se=c.use_se,
                    residual_posterior=c.res_dist,
                    remat=c.remat_policy,
                    name=f"latent_group_{len(groups)}",
                )
            )
    return groups


def decoder_up_cells(config):
    """One up-sampling cell between consecutive decoder scales."""
    return [
        residual_cell(
            config,
            config.num_channels_dec * decoder_mult(config, scale) // CHANNEL_MULT,
            "up_dec",
            f"decoder_up_{scale}",
        )
        for scale in range(config.num_latent_scales - 1)
    ]


def post_process_cells(config):
    """The cells between the last latent scale and the image-conditional conv."""
    c = config
    cells = []
    for block in range(c.num_postprocess_blocks):
        mult = CHANNEL_MULT ** (c.num_postprocess_blocks - block)
        for cell in range(c.num_postprocess_cells):
            filters = c.num_channels_dec * mult // CHANNEL_MULT
            cell_type = "up_post" if cell == 0 else "normal_post"
            cells.append(residual_cell(c, filters, cell_type, f"post_process_{len(cells)}"))
    return cells
