"""Steering: add a vector to a hook's activations while the model runs or generates, and measure what it does.

    from interp.steering import steer, steering
    result = steer(model, "dataset:sentiment", layer=15, coefs=[0, 4, 8], prompt="I think the movie was")
    with steering(model, result.vector, result.hook, 4.0):
        model.generate(tokens, max_new_tokens=20)

`core` is the addition (one mechanism, also used by the probe interventions), `vectors` the sources
(`dataset:`, `contrast:`, `probe:`, `feature:`, `file:`, `edit:`), `measure` the behaviour and side-effect
measures, `run` the dose-response with a random control, `result` its Result.
"""

from interp.steering.core import POSITIONS, add, add_hook, position_mask, steering
from interp.steering.result import SteerResult
from interp.steering.run import steer
from interp.steering.vectors import (
    SteeringVector,
    parse_vector_spec,
    read_vector,
    resolve_vector,
    save_vector,
)

__all__ = ["POSITIONS", "SteerResult", "SteeringVector", "add", "add_hook", "parse_vector_spec", "position_mask",
           "read_vector", "resolve_vector", "save_vector", "steer", "steering"]
