"""The models and their loading: native LLaDA and Dream (the official checkpoints' parameter names), the small
:class:`TinyMDM` for grid tasks, ``load_model`` for local hub-layout folders, and the package's own saved models.
Their training (MDM pretraining) lives in ``upo_fast.training.pretrain_mdm``."""

from upo_fast.models.tiny_mdm import TinyMDM, TinyMDMConfig, load_tiny_mdm


def _register_auto_classes() -> None:
    """Make ``AutoConfig``/``AutoModelForMaskedLM.from_pretrained`` understand ``model_type="tiny_mdm"``.

    ``exist_ok=True`` plus the broad guard keep re-imports (importlib.reload, several test sessions) and
    transformers versions with a different registry API from breaking ``import upo_fast.models``.
    """
    try:
        from transformers import AutoConfig, AutoModelForMaskedLM

        AutoConfig.register(TinyMDMConfig.model_type, TinyMDMConfig, exist_ok=True)
        AutoModelForMaskedLM.register(TinyMDMConfig, TinyMDM, exist_ok=True)
    except (ValueError, TypeError, ImportError, AttributeError):
        pass


_register_auto_classes()

__all__ = ["TinyMDM", "TinyMDMConfig", "load_tiny_mdm"]
