"""The lm-evaluation-harness model class `steerlens`: any steerlens model, optionally steered.

`lm_class()` builds (once) a subclass of lm-eval's `TemplateLM` and registers it in lm-eval's model
registry under the name "steerlens", so `lm_eval.simple_evaluate(model="steerlens",
model_args="model=smollm2-135m-instruct,vector=DIR,layer=10,strength=4", ...)` and the
`steerlens-eval` / `python -m steerlens.eval` command line (lm-eval's own CLI with this class
registered first) evaluate a steered model on any lm-eval task. The requests are answered by
`HarnessRunner` (see `steerlens.eval.harness` for the tokenization contract, batching, and where
the vector is written). lm-eval is imported only when the class is first built, so steerlens
imports without it; the extra `steerlens[eval]` installs it.

Model arguments (`--model_args`, comma-separated key=value): `model` (a name `load_model`
accepts; default smollm2-135m-instruct), `vector` (a directory `SteeringVector.save` wrote),
`layer` (keep only that layer of the vector), `strength`, `positions` ("all" by default),
`component` (refuse a vector stored at another site), `device`, `batch_size`, `add_bos_token`,
`max_gen_toks`, `seed`, and `allow_other_model` (a vector recorded for another model id is an
error unless this is true).
"""

from __future__ import annotations

from typing import Any

import torch

from ..backend import Model, load_model, runtime
from ..sites import COMPONENTS
from ..vectors import SteeringVector, check_model_id
from .harness import HarnessRunner, check_finite_strength

MODEL_NAME = "steerlens"
"""The name the class is registered under in lm-eval's model registry."""

_CLASS: list[type] = []

MODEL_ARGS: dict[str, Any] = {
    "model": "smollm2-135m-instruct", "vector": None, "layer": None, "strength": None,
    "positions": "all", "component": None, "device": None, "batch_size": 16,
    "add_bos_token": None, "max_gen_toks": 256, "seed": 0, "allow_other_model": False,
}
"""The `--model_args` the steerlens class accepts, with their defaults (`model` may also be an
already loaded steerlens model, and `vector` a `SteeringVector`, when built from Python)."""


def _flag(value: Any, name: str) -> bool | None:
    if value is None or isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in ("true", "1", "yes"):
        return True
    if text in ("false", "0", "no"):
        return False
    raise ValueError(f"{name} must be true or false, got {value!r}.")


def _int(value: Any, name: str) -> int:
    try:
        out = int(str(value))
    except ValueError:
        raise ValueError(f"{name} must be an integer, got {value!r}.") from None
    return out


def load_steering(model: Model, vector: str | SteeringVector | None, layer: Any = None,
                  strength: Any = None,
                  component: str | None = None, allow_other_model: bool = False
                  ) -> tuple[SteeringVector | None, float | None]:
    """The vector and strength that `--model_args` describe, checked against the model.

    Args:
        model: the model the vector will steer.
        vector: a directory `SteeringVector.save` wrote, a `SteeringVector` (in-process use), or
            None (unsteered).
        layer: keep only this layer of the vector (None: all its layers).
        strength: the strength (required with a vector; a finite number or its text).
        component: when given, the site the vector must be stored at.
        allow_other_model: accept a vector recorded for another model id (with a warning).

    Returns:
        (vector or None, strength or None).

    Raises:
        ValueError: for a strength without a vector or a vector without one, a non-finite
            strength, a layer the vector lacks, a component mismatch, or a vector for another
            model (other width or layers, or another recorded model id unless allowed).
        VectorFileError: if the vector directory is missing or corrupt.
    """
    if vector is None or vector == "":
        if strength is not None or layer is not None:
            raise ValueError("strength/layer were given without vector=DIR; pass the vector "
                             "directory, or neither for the unsteered model.")
        return None, None
    if strength is None:
        raise ValueError("vector=DIR needs strength=S (a finite number, e.g. strength=4).")
    s = check_finite_strength(strength)
    if isinstance(vector, SteeringVector):
        vec = vector.check_model(model)
        check_model_id(vec.model_id, model, not allow_other_model, "the vector passed in")
    else:
        vec = SteeringVector.load(vector, model=model, strict=not allow_other_model)
    if layer is not None:
        lay = _int(layer, "layer")
        if lay not in vec.layers:
            raise ValueError(f"The vector in {vector} has no layer {lay}; its layers are "
                             f"{vec.layers}.")
        vec = vec.layer(lay)
    if component is not None:
        if component not in COMPONENTS:
            raise ValueError(f"component must be one of {list(COMPONENTS)}, got {component!r}.")
        if vec.component != component:
            raise ValueError(f"The vector in {vector} is stored at {vec.component!r}, not "
                             f"{component!r}.")
    return vec, s


def lm_class() -> type:
    """The lm-eval model class for steerlens, built and registered on first call.

    Returns:
        The class (a subclass of `lm_eval.api.model.TemplateLM`), registered as "steerlens".

    Raises:
        ImportError: if lm-eval is not installed (install `steerlens[eval]`).
    """
    if _CLASS:
        return _CLASS[0]
    try:
        import lm_eval.models  # noqa: F401  (fills the registry with lm-eval's own models first)
        from lm_eval.api.model import TemplateLM
        from lm_eval.api.registry import model_registry, register_model
    except ImportError as err:
        raise ImportError("steerlens.eval needs lm-evaluation-harness: pip install "
                          "'steerlens[eval]' (or 'lm-eval==0.4.13').") from err

    class SteerlensLM(TemplateLM):
        """A steerlens model (optionally steered) as an lm-evaluation-harness model."""

        def __init__(self, **model_args: Any) -> None:
            super().__init__()
            args = {**MODEL_ARGS, **{k: v for k, v in model_args.items()
                                     if v is not None or k in MODEL_ARGS}}
            args.pop("max_batch_size", None)  # lm-eval passes these to every model class
            unknown = sorted(set(args) - set(MODEL_ARGS))
            if unknown:
                raise ValueError(f"Unknown steerlens model_args {unknown}; valid: "
                                 f"{', '.join(MODEL_ARGS)}.")
            model, device = args["model"], args["device"]
            vector, layer, strength = args["vector"], args["layer"], args["strength"]
            batch_size = args["batch_size"]
            lm = model if not isinstance(model, str) else load_model(model, device=device)
            vec, s = load_steering(lm, vector, layer, strength, args["component"],
                                   bool(_flag(args["allow_other_model"], "allow_other_model")))
            bs = 16 if str(batch_size).startswith("auto") else _int(batch_size, "batch_size")
            self.runner = HarnessRunner(
                lm, vec, s, positions=args["positions"], batch_size=bs,
                add_bos_token=_flag(args["add_bos_token"], "add_bos_token"),
                max_gen_toks=_int(args["max_gen_toks"], "max_gen_toks"),
                seed=_int(args["seed"], "seed"))
            self.tokenizer = self.runner.tokenizer
            self._device = runtime.model_device(lm)
            self.steerlens_model = lm

        @classmethod
        def create_from_arg_string(cls, arg_string: str, additional_config: dict | None = None):
            from lm_eval.utils import simple_parse_args_string

            return cls.create_from_arg_obj(simple_parse_args_string(arg_string), additional_config)

        @classmethod
        def create_from_arg_obj(cls, arg_dict: dict, additional_config: dict | None = None):
            # --device / --batch_size fill in what --model_args leave out; model_args win (lm-eval's
            # own merge would pass a key twice). lm-eval's CLI default device "cuda" is kept only
            # when CUDA exists.
            extra = {k: v for k, v in (additional_config or {}).items() if v is not None}
            if str(extra.get("device", "")).startswith("cuda") and not torch.cuda.is_available():
                extra.pop("device")
            return cls(**{**extra, **arg_dict})

        @property
        def eot_token_id(self) -> int:
            return self.runner.eot_token_id

        @property
        def prefix_token_id(self) -> int:
            return self.runner.prefix_token_id

        @property
        def max_length(self) -> int:
            return self.runner.max_length

        @property
        def tokenizer_name(self) -> str:
            return str(getattr(self.tokenizer, "name_or_path", "steerlens")).replace("/", "__")

        def tok_encode(self, string: str, add_special_tokens: bool | None = None,
                       **kwargs: Any) -> list[int]:
            return self.runner.tok_encode(string, add_special_tokens)

        def _encode_pair(self, context: str, continuation: str) -> tuple[list[int], list[int]]:
            return self.runner.encode_pair(context, continuation)

        def _loglikelihood_tokens(self, requests, disable_tqdm: bool = False, **kwargs: Any):
            out = self.runner.loglikelihood_tokens([(c, x) for _, c, x in requests])
            for (key, _, _), answer in zip(requests, out):
                if key is not None:
                    self.cache_hook.add_partial("loglikelihood", key, answer)
            return out

        def loglikelihood_rolling(self, requests, disable_tqdm: bool = False) -> list[float]:
            texts = [req.args[0] for req in requests]
            out = self.runner.loglikelihood_rolling(texts)
            for text, value in zip(texts, out):
                self.cache_hook.add_partial("loglikelihood_rolling", (text,), value)
            return out

        def generate_until(self, requests, disable_tqdm: bool = False) -> list[str]:
            args = [(req.args[0], req.args[1]) for req in requests]
            out = self.runner.generate_until(args)
            for (ctx, kw), text in zip(args, out):
                self.cache_hook.add_partial("generate_until", (ctx, kw), text)
            return out

        def apply_chat_template(self, chat_history: list[dict[str, str]],
                                add_generation_prompt: bool = True) -> str:
            return self.tokenizer.apply_chat_template(
                chat_history, tokenize=False, add_generation_prompt=add_generation_prompt,
                continue_final_message=not add_generation_prompt)

    if MODEL_NAME not in model_registry:
        register_model(MODEL_NAME)(SteerlensLM)
    _CLASS.append(SteerlensLM)
    return SteerlensLM
