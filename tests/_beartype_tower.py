"""The runtime type checker the test suite instruments steerlens with (via jaxtyping's hook).

beartype with the PEP 484 numeric tower, so an int is accepted where a float is annotated
(`strength=2`), exactly as static checkers accept it. Used as
`pytest --jaxtyping-packages=steerlens,_beartype_tower.typechecker` (see pyproject).
"""

from beartype import BeartypeConf, beartype

typechecker = beartype(conf=BeartypeConf(is_pep484_tower=True))
