"""conv_ext.Conv2d (a torch.nn.Conv2d computed by conv_ext), conv_ext.convert and conv_ext.revert."""
import copy
from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from .functional import conv2d


class Conv2d(nn.Conv2d):
    """Drop-in :class:`torch.nn.Conv2d`: the same constructor, parameters and state_dict; the
    forward and backward passes run conv_ext's kernels."""

    def _conv_forward(self, input: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor]):
        if torch.jit.is_scripting():
            return self._scripted_conv_forward(input, weight, bias)
        if self.padding_mode != "zeros":  # as nn.Conv2d: pad explicitly, then convolve unpadded
            input = F.pad(input, self._reversed_padding_repeated_twice, mode=self.padding_mode)
            return conv2d(input, weight, bias, self.stride, 0, self.dilation, self.groups)
        return conv2d(input, weight, bias, self.stride, self.padding, self.dilation, self.groups)

    def _scripted_conv_forward(self, input: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor]):
        """The forward under torch.jit.script, which compiles only a subset of Python (functional.py's
        argument handling is outside it): the op itself, with the padding made explicit as
        nn.Conv2d.__init__ computed it ('same' and the other padding modes)."""
        unbatched = input.dim() == 3
        if unbatched:
            input = input.unsqueeze(0)
        padding = [0, 0]
        if self.padding_mode != "zeros" or isinstance(self.padding, str):
            mode = "constant" if self.padding_mode == "zeros" else self.padding_mode
            input = F.pad(input, self._reversed_padding_repeated_twice, mode=mode)
        else:
            padding = [self.padding[0], self.padding[1]]
        out = torch.ops.conv_ext.conv2d_forward(input, weight, bias, [self.stride[0], self.stride[1]], padding,
                                                [self.dilation[0], self.dilation[1]], self.groups)
        return out.squeeze(0) if unbatched else out

    @classmethod
    def from_conv(cls, conv: nn.Conv2d) -> "Conv2d":
        """A conv_ext.Conv2d with the configuration of ``conv`` that shares its parameters (and its
        buffers, hooks and parametrizations)."""
        if not isinstance(conv, nn.Conv2d):
            raise TypeError(f"conv_ext.Conv2d.from_conv: expected an nn.Conv2d, got {type(conv).__name__}")
        return _sharing(_retyped_class(conv, nn.Conv2d, cls) or cls, conv)


def _retyped_class(module: nn.Module, source: type, target: type) -> Optional[type]:
    """The class ``module`` takes when its ``source`` class becomes ``target``: ``target`` itself,
    or for a module torch.nn.utils.parametrize has given its own subclass of ``source`` (weight
    norm, spectral norm, orthogonal: properties that compute the parametrized tensors), the same
    subclass of ``target``. None for any other class (a subclass with its own forward)."""
    cls = type(module)
    if cls is source:
        return target
    if cls.__bases__ == (source,) and torch.nn.utils.parametrize.is_parametrized(module):
        members = {k: v for k, v in vars(cls).items() if k not in ("__dict__", "__weakref__", "__doc__")}
        return type(cls.__name__, (target,), members)
    return None


def _sharing(cls: type, conv: nn.Conv2d) -> nn.Conv2d:
    """``conv`` as a module of class ``cls``: its configuration and everything else it holds --
    parameters (the same Parameter objects: optimizers keep working), buffers, submodules
    (parametrizations), hooks (weight norm's and pruning's forward pre-hooks, the user's own) and
    other attributes. The containers are copied and their contents shared, as torch.ao's module
    swaps keep hooks: what is registered on one module later does not appear on the other."""
    new = cls.__new__(cls)
    for key, value in vars(conv).items():
        vars(new)[key] = copy.copy(value) if isinstance(value, (dict, list, set)) else value
    return new


def _swap(model: nn.Module, source: type, target: type) -> nn.Module:
    cls = _retyped_class(model, source, target)
    if cls is not None:
        return _sharing(cls, model)
    for name, child in model.named_children():
        swapped = _swap(child, source, target)
        if swapped is not child:
            setattr(model, name, swapped)
    return model


def convert(model: nn.Module) -> nn.Module:
    """Replace every ``nn.Conv2d`` in ``model`` (nested too) with a conv_ext.Conv2d sharing its
    parameters, hooks and parametrizations; returns the model (a converted module if ``model`` is
    itself an nn.Conv2d). Subclasses of nn.Conv2d with their own forward are left alone."""
    return _swap(model, nn.Conv2d, Conv2d)


def revert(model: nn.Module) -> nn.Module:
    """The inverse of :func:`convert`: every conv_ext.Conv2d in ``model`` back to an ``nn.Conv2d``
    sharing its parameters -- for tools that look modules up by their exact type, such as
    torch.ao.quantization's eager-mode fusion and quantization-aware training."""
    return _swap(model, Conv2d, nn.Conv2d)
