"""The LoRA adapter around a base model: its config from TrainConfig (k-bit preparation and gradient checkpointing where asked), and dropout off for the preference objectives."""

from __future__ import annotations

import torch
import torch.utils.checkpoint

from idiolect.core.training.config import TrainConfig


def build_peft_model(cfg: TrainConfig, model, device: str):
    from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training

    gc = cfg.gradient_checkpointing if cfg.gradient_checkpointing is not None else device == "cuda"
    if getattr(model, "is_loaded_in_4bit", False):
        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=gc)
    elif gc:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model.enable_input_require_grads()
    preference = cfg.objective != "sft"
    lora = LoraConfig(
        r=cfg.lora_r,
        lora_alpha=cfg.lora_alpha,
        lora_dropout=0.0 if preference else cfg.lora_dropout,
        target_modules=cfg.target_modules,
        task_type="CAUSAL_LM",
    )
    model = get_peft_model(model, lora)
    if preference:
        disable_dropout(model)
    return model


def disable_dropout(model) -> None:
    """Preference objectives compare the policy's log-probs with the reference pass's (run without dropout),
    so dropout in the policy pass would only add noise to the implicit reward (TRL's ``disable_dropout``)."""
    for module in model.modules():
        if isinstance(module, torch.nn.Dropout):
            module.p = 0.0
