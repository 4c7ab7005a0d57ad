"""Self-checks for notebook 05c (using virtual neurons)."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from ..routing import route_images
from ..virtual import VirtualNeurons
from . import report

__all__ = ["check_busiest_group", "check_route_by_hand"]


def check_busiest_group(answer: Any, acts: torch.Tensor, groups: dict[str, torch.Tensor], virtual: int) -> bool:
    """Exercise 1: the group of images whose mean activation of ``virtual`` is largest.

    ``acts`` [M, k] are one neuron's virtual activations; ``groups`` maps a group name to a
    BoolTensor [M] of its images.
    """
    means = {name: float(acts[mask, virtual].mean()) if mask.any() else float("-inf") for name, mask in groups.items()}
    expected = max(means, key=means.get)
    return report("Exercise 1", answer, expected,
                  hint="average acts[group, virtual] over each group's images and take the largest")  # fmt: skip


def check_route_by_hand(
    answer: Any, model: nn.Module, image: torch.Tensor, layer: str, lower_layer: str, vn: VirtualNeurons, neuron: int
) -> bool:
    """Exercise 2: ``answer = (circuit [C_lower], virtual neuron id)`` of one image, by hand.

    Compared with :func:`puretools.routing.route_images` (the batched circuit engine).
    """
    routes = route_images(model, image[None], layer, lower_layer, vn)
    pos = vn.position(neuron)
    expected_circuit, expected_route = routes.circuits[pos, 0], int(routes.routes[pos, 0])

    def correct(a: Any) -> bool:
        circuit, route = a
        circuit = torch.as_tensor(circuit).detach().double().reshape(-1)
        return (
            circuit.shape == expected_circuit.shape
            and bool(torch.allclose(circuit, expected_circuit.double(), atol=1e-4, rtol=1e-3))
            and int(route) == expected_route
        )

    return report("Exercise 2", answer, correct=correct, like=(expected_circuit, expected_route),
                  hint="answer is (circuit, virtual id); the circuit is grad x activation at the lower layer, "
                       "summed over space and divided by its L1 norm; the id is the nearest centroid")  # fmt: skip
