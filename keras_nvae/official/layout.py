"""The official code's module lists, derived from an NVAE's latent groups.

The official model keeps its cells in flat lists (`enc_tower`, `dec_tower`,
`enc_sampler`, `dec_sampler`, `nf_cells`, ...) whose indices name its
parameters; keras_nvae keeps them per latent group. The converter names
tensors by these lists, and the spectral regulariser keeps its state in
their order.
"""


def official_modules(network):
    """The layers of `network` arranged as the official module lists.

    Args:
        network: a built `keras_nvae.NVAE` (or `network.NVAENetwork`).

    Returns:
        {official module name: layer, or list of layers in official order}.
    """
    scales = network.groups_by_scale()
    groups = network.groups
    enc_tower = []
    for scale, scale_groups in enumerate(reversed(scales)):
        for group in reversed(scale_groups):
            enc_tower += group.encoder_cells
            if not group.is_top:
                enc_tower.append(group.posterior_input)
        if scale < len(scales) - 1:
            enc_tower.append(network.encoder_down_cells[scale])
    dec_tower = []
    for scale, scale_groups in enumerate(scales):
        for group in scale_groups:
            dec_tower += group.decoder_cells + [group.combiner]
        if scale < len(scales) - 1:
            dec_tower.append(network.decoder_up_cells[scale])
    return {
        "stem": network.stem,
        "pre_process": list(network.pre_process),
        "enc_tower": enc_tower,
        "enc0": groups[0].posterior_input,
        "enc_sampler": [group.posterior_head for group in groups],
        "dec_sampler": [group.prior_head for group in groups[1:]],
        "nf_cells": [flow for group in groups for flow in group.flows],
        "dec_tower": dec_tower,
        "post_process": list(network.post_process),
        "image_conditional": network.image_conditional,
    }


def modules_in_official_order(network):
    """`official_modules` flattened, the samplers and flows group by group.

    Args:
        network: a built `keras_nvae.NVAE`.

    Returns:
        The list of top-level modules, in the order the spectral regulariser
        keeps its power-iteration state (so that state does not depend on
        how the layers are arranged in Python).
    """
    modules = official_modules(network)
    ordered = [modules["stem"], *modules["pre_process"], *modules["enc_tower"], modules["enc0"]]
    for group in network.groups:
        ordered += [group.posterior_head, *group.flows]
        if group.prior_head is not None:
            ordered.append(group.prior_head)
    ordered += [*modules["dec_tower"], *modules["post_process"], modules["image_conditional"]]
    return ordered
