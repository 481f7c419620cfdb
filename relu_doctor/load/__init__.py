"""Loading: model files and factories (``model``), damage checks (``verify``), unpickling and
its allowlist (``pickles``, ``safe_numpy``), state dicts (``state_dict``), ``MODULE:NAME``
specs (``specs``) and data files (``data``). Nothing here runs code from a file without trust.
"""

from relu_doctor.load.model import LoadedModel, load_model, trust_from_env

__all__ = ["LoadedModel", "load_model", "trust_from_env"]
