"""Diffusion side of kgface: the KG adapter (decoupled cross-attention) and the model stacks it attaches to."""
from .adapter import (
    AdapterError,
    KGAdapterConfig,
    TokenPassThrough,
    adapter_parameters,
    adapter_state_dict,
    attach_kg_adapter,
    detach_kg_adapter,
    get_adapter_scale,
    has_kg_adapter,
    kg_added_cond_kwargs,
    load_kg_adapter,
    pipeline_token_embeds,
    read_kg_adapter,
    save_kg_adapter,
    set_adapter_scale,
)
from .models import (
    TINY_DEFAULTS,
    PretrainedStack,
    add_unet_lora,
    build_tiny_stack,
    check_pretrained_folder,
    load_pretrained_stack,
    lora_state_dict,
    mark_trainable,
    tiny_config,
    trainable_parameters,
)

__all__ = [
    "AdapterError", "KGAdapterConfig", "TokenPassThrough", "adapter_parameters", "adapter_state_dict",
    "attach_kg_adapter", "detach_kg_adapter", "get_adapter_scale", "has_kg_adapter", "kg_added_cond_kwargs",
    "load_kg_adapter", "pipeline_token_embeds", "read_kg_adapter", "save_kg_adapter", "set_adapter_scale",
    "TINY_DEFAULTS", "PretrainedStack", "add_unet_lora", "build_tiny_stack", "check_pretrained_folder",
    "load_pretrained_stack", "lora_state_dict", "mark_trainable", "tiny_config", "trainable_parameters",
]
