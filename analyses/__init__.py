"""The experiments behind steerlens's findings: one module per analysis, run with `python -m`.

    python -m analyses.mid_layer_sweep [--quick] [--threads 1] ...   # run one analysis
    python -m analyses.gallery                                       # redraw every figure
    python -m analyses.findings                                      # rebuild results/FINDINGS.md

Every analysis module has the same shape:

- `main(argv=None, model=None)`: parse the shared flags (`_common.parser`) plus its own, run,
  save tables under `results/<name>/`, record its headline numbers as finding rows
  (`findings.save_findings`), and draw its figures;
- `make_figures(results_dir, figures_dir)`: redraw those figures from the saved results only
  (no model), for the gallery.

`ANALYSES` below is the one list of analyses. The gallery (`analyses.gallery`), the findings table
(`analyses.findings` -> `results/FINDINGS.md`) and the tests all read it; adding an analysis is a
new module plus one line here.
"""

from __future__ import annotations

import ast
import importlib
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "results"
FIGURES = ROOT / "figures"


@dataclass(frozen=True)
class Analysis:
    """One registered analysis: the module `analyses.<name>`, writing `results/<results_name>/`."""

    name: str
    results_name: str = ""  # directory under results/ (default: the module name)

    @property
    def module_name(self) -> str:
        return f"{__name__}.{self.name}"

    @property
    def command(self) -> str:
        """The command that runs it (with default settings)."""
        return command(self.name)

    @property
    def question(self) -> str:
        """The first line of the module's docstring (read without importing the module)."""
        path = Path(__file__).with_name(f"{self.name}.py")
        doc = ast.get_docstring(ast.parse(path.read_text(encoding="utf-8"))) or ""
        return doc.strip().splitlines()[0] if doc.strip() else ""

    def results_dir(self, results_root: Path = RESULTS) -> Path:
        return Path(results_root) / (self.results_name or self.name)

    def load(self) -> ModuleType:
        return importlib.import_module(self.module_name)


ANALYSES: tuple[Analysis, ...] = (
    Analysis("mid_layer_sweep"),
    Analysis("kl_diversity_by_layer"),
    Analysis("base_vs_instruct"),
    Analysis("outcome_direction"),
    Analysis("eigengap_layers"),
    Analysis("spectral_weights"),
    Analysis("train_sae", results_name="sae_training"),
    Analysis("sae_steering"),
    Analysis("refusal"),
    Analysis("conditional_steering", results_name="conditional"),
    Analysis("head_eigengap", results_name="heads"),
    Analysis("sae_clamping"),
    Analysis("llama_cpp_agreement", results_name="interop"),
    Analysis("harness_accuracy", results_name="eval"),
    Analysis("orthogonalisation", results_name="interventions"),
    Analysis("composition"),
    Analysis("cross_architecture"),
)


def names() -> list[str]:
    """Registered analysis names, in gallery and findings-table order."""
    return [a.name for a in ANALYSES]


def get(name: str) -> Analysis:
    """The registered analysis called `name`."""
    for a in ANALYSES:
        if a.name == name:
            return a
    raise ValueError(f"Unknown analysis {name!r}; registered analyses are {names()}.")


def command(name: str, *args: str) -> str:
    """The shell command that runs analysis `name` with `args`, e.g. for a figure's caption."""
    return " ".join((f"python -m {__name__}.{name}", *args))
