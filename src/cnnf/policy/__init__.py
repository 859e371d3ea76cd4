"""The pure policy core: compile a policy to indexes, evaluate attempts,
explain verdicts (and, beside the engine, policy documents and checks).

Nothing here does I/O: no sockets, files or clocks.
"""

from cnnf.policy.engine import (
    CompiledPolicy,
    Explanation,
    RuleStep,
    compile_policy,
)

__all__ = ["CompiledPolicy", "Explanation", "RuleStep", "compile_policy"]
