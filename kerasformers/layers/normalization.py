"""ScaleOffset and the bert4keras-style LayerNormalization family.

One class covers standard LayerNorm, RMSNorm (`zero_mean=False, offset=False`),
the parameter-free norm of RoFormerV2 (`scale=False, offset=False`) and
Conditional LayerNorm (`conditional=True`, inputs `[x, cond]`).

>>> import keras, numpy as np
>>> from kerasformers.layers import LayerNormalization
>>> y = LayerNormalization(epsilon=1e-12)(np.array([[1.0, 2.0, 3.0]], "float32"))
>>> [round(float(v), 3) for v in keras.ops.convert_to_numpy(y)[0]]
[-1.225, 0.0, 1.225]
"""

import keras
from keras import ops

from kerasformers.layers.core import with_sublayer_policies
from kerasformers.ops import get_activation, serialize_activation
from kerasformers.saving import register


@register
class ScaleOffset(keras.layers.Layer):
    """Per-channel affine `x * gamma + beta` (weights named `gamma`, `beta`).

    With `conditional=True` the input is `[x, cond]`; `cond` is optionally
    projected by a Dense(hidden_units) and zero-initialised Dense layers of it
    are added to gamma and beta (Conditional LayerNorm).
    """

    def __init__(
        self,
        scale=True,
        offset=True,
        conditional=False,
        hidden_units=None,
        hidden_activation="linear",
        hidden_initializer="glorot_uniform",
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.scale = scale
        self.offset = offset
        self.conditional = conditional
        self.hidden_units = hidden_units
        self.hidden_activation = get_activation(hidden_activation)
        self.hidden_initializer = keras.initializers.get(hidden_initializer)
        self.supports_masking = True

    def build(self, input_shape):
        if self.conditional:
            input_shape, cond_shape = input_shape
        dim = input_shape[-1]
        if self.offset is True:
            self.beta = self.add_weight(name="beta", shape=(dim,), initializer="zeros")
        if self.scale is True:
            self.gamma = self.add_weight(name="gamma", shape=(dim,), initializer="ones")
        if self.conditional:
            if self.hidden_units is not None:
                self.hidden_dense = keras.layers.Dense(
                    self.hidden_units,
                    activation=self.hidden_activation,
                    use_bias=False,
                    kernel_initializer=self.hidden_initializer,
                    name="hidden_dense",
                    dtype=self.dtype_policy,
                )
                self.hidden_dense.build(cond_shape)
                cond_shape = tuple(cond_shape[:-1]) + (self.hidden_units,)
            if self.offset is not False and self.offset is not None:
                self.beta_dense = keras.layers.Dense(
                    dim,
                    use_bias=False,
                    kernel_initializer="zeros",
                    name="beta_dense",
                    dtype=self.dtype_policy,
                )
                self.beta_dense.build(cond_shape)
            if self.scale is not False and self.scale is not None:
                self.gamma_dense = keras.layers.Dense(
                    dim,
                    use_bias=False,
                    kernel_initializer="zeros",
                    name="gamma_dense",
                    dtype=self.dtype_policy,
                )
                self.gamma_dense.build(cond_shape)

    def _affine(self, x, inputs):
        """Apply scale/offset to float32 `x`; `inputs` carries the condition."""
        beta = gamma = None
        if self.offset is True:
            beta = ops.cast(self.beta, "float32")
        elif self.offset not in (False, None):
            beta = float(self.offset)
        if self.scale is True:
            gamma = ops.cast(self.gamma, "float32")
        elif self.scale not in (False, None):
            gamma = float(self.scale)
        if self.conditional:
            cond = inputs[1]
            if self.hidden_units is not None:
                cond = self.hidden_dense(cond)
            while len(cond.shape) < len(x.shape):
                cond = ops.expand_dims(cond, 1)
            if beta is not None:
                beta = beta + ops.cast(self.beta_dense(cond), "float32")
            if gamma is not None:
                gamma = gamma + ops.cast(self.gamma_dense(cond), "float32")
        if gamma is not None:
            x = x * gamma
        if beta is not None:
            x = x + beta
        return x

    def call(self, inputs):
        x = inputs[0] if self.conditional else inputs
        out = self._affine(ops.cast(x, "float32"), inputs)
        return ops.cast(out, self.compute_dtype)

    def compute_mask(self, inputs, mask=None):
        if self.conditional and isinstance(mask, (list, tuple)):
            return mask[0]
        return mask

    def compute_output_shape(self, input_shape):
        return tuple(input_shape[0]) if self.conditional else tuple(input_shape)

    def get_config(self):
        config = super().get_config()
        config.update(
            scale=self.scale,
            offset=self.offset,
            conditional=self.conditional,
            hidden_units=self.hidden_units,
            hidden_activation=serialize_activation(self.hidden_activation),
            hidden_initializer=keras.initializers.serialize(self.hidden_initializer),
        )
        return with_sublayer_policies(self, config)


@register
class LayerNormalization(ScaleOffset):
    """(Conditional) Layer Normalization, computed in float32.

    zero_mean: subtract the mean (False gives RMSNorm); unit_variance: divide by
    sqrt(mean square + epsilon). epsilon defaults to Keras' 1e-7, as in bert4keras.
    """

    def __init__(self, zero_mean=True, unit_variance=True, epsilon=None, **kwargs):
        super().__init__(**kwargs)
        self.zero_mean = zero_mean
        self.unit_variance = unit_variance
        self.epsilon = epsilon or keras.config.epsilon()

    def call(self, inputs):
        x = ops.cast(inputs[0] if self.conditional else inputs, "float32")
        if (
            self.zero_mean
            and self.unit_variance
            and self.scale is True
            and self.offset is True
            and not self.conditional
        ):
            # Standard LayerNorm: one fused kernel (torch F.layer_norm) instead of ~9 ops.
            y = ops.layer_normalization(
                x,
                ops.cast(self.gamma, "float32"),
                ops.cast(self.beta, "float32"),
                epsilon=self.epsilon,
            )
            return ops.cast(y, self.compute_dtype)
        if self.zero_mean:
            x = x - ops.mean(x, axis=-1, keepdims=True)
        if self.unit_variance:
            variance = ops.mean(ops.square(x), axis=-1, keepdims=True)
            x = x * ops.rsqrt(variance + self.epsilon)
        return ops.cast(self._affine(x, inputs), self.compute_dtype)

    def get_config(self):
        config = super().get_config()
        config.update(
            zero_mean=self.zero_mean, unit_variance=self.unit_variance, epsilon=self.epsilon
        )
        return config
