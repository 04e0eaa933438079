"""Evaluation of an SAE beyond reconstruction: inside its model, by ablating its latents, and its dictionary.

    fidelity.py   the SAE spliced into the backbone: denoising loss recovered, DDIM samples (same seeds)
    concepts.py   spurious-correlation removal (SCR) and targeted probe perturbation (TPP)
    health.py     latent density, dead and dense latents, encoder–decoder and decoder–decoder cosines

Small functions on arrays and models; the `evaluate` stage (stages/evaluate.py) runs them on a store.
"""
from .concepts import SCRResult, TPPResult, scr, tpp
from .fidelity import FidelityResult, SpliceHook, denoising_losses, loss_recovered, splice
from .health import Health, dictionary_health

__all__ = ["FidelityResult", "Health", "SCRResult", "SpliceHook", "TPPResult", "denoising_losses",
           "dictionary_health", "loss_recovered", "scr", "splice", "tpp"]
