"""Position-wise feed-forward block (optionally gated, GLU-style).

>>> import numpy as np
>>> from kerasformers.layers import FeedForward
>>> ffn = FeedForward(8, activation=["gelu", "linear"])   # T5.1.1-style gated FFN
>>> tuple(ffn(np.zeros((2, 3, 4), "float32")).shape)
(2, 3, 4)
"""

import keras

from kerasformers.layers.core import remat_call, remat_scope, with_sublayer_policies
from kerasformers.ops import get_activation, serialize_activation
from kerasformers.saving import register


@register
class FeedForward(keras.layers.Layer):
    """Dense(units, activation) -> Dense(input_dim).

    With a list of activations the first stage is the product of one Dense branch
    per activation (`i0_dense`, `i1_dense`, ...), e.g. ['gelu', 'linear'] = GEGLU.
    remat=True: gradient checkpointing, the [.., units] intermediate activations
    are recomputed in the backward pass instead of stored (Keras' remat).
    """

    def __init__(
        self,
        units,
        activation="relu",
        use_bias=True,
        kernel_initializer="glorot_uniform",
        remat=False,
        **kwargs,
    ):
        with remat_scope(remat):
            super().__init__(**kwargs)
        self.remat = remat
        self.units = units
        if not isinstance(activation, (list, tuple)):
            activation = [activation]
        self.activation = [get_activation(a) for a in activation]
        self.use_bias = use_bias
        self.kernel_initializer = keras.initializers.get(kernel_initializer)
        self.supports_masking = True

    def build(self, input_shape):
        self.input_dense = []
        for i, act in enumerate(self.activation):
            dense = keras.layers.Dense(
                self.units,
                activation=act,
                use_bias=self.use_bias,
                kernel_initializer=self.kernel_initializer,
                name=f"i{i}_dense",
                dtype=self.dtype_policy,
            )
            dense.build(input_shape)
            self.input_dense.append(dense)
        self.o_dense = keras.layers.Dense(
            input_shape[-1],
            use_bias=self.use_bias,
            kernel_initializer=self.kernel_initializer,
            name="o_dense",
            dtype=self.dtype_policy,
        )
        self.o_dense.build(tuple(input_shape[:-1]) + (self.units,))

    def call(self, inputs):
        x = self.input_dense[0](inputs)
        for dense in self.input_dense[1:]:
            x = x * dense(inputs)
        return self.o_dense(x)

    def rematerialized_call(self, layer_call, *args, **kwargs):
        if super().rematerialized_call(layer_call, *args, **kwargs) is layer_call:
            return layer_call
        return remat_call(layer_call)

    def compute_output_shape(self, input_shape):
        return tuple(input_shape)

    def get_config(self):
        config = super().get_config()
        act = [serialize_activation(a) for a in self.activation]
        config.update(
            units=self.units,
            activation=act if len(act) > 1 else act[0],
            use_bias=self.use_bias,
            kernel_initializer=keras.initializers.serialize(self.kernel_initializer),
            remat=self.remat,
        )
        return with_sublayer_policies(self, config)
