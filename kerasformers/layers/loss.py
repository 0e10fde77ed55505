"""bert4keras' `Loss` layer: a loss written as a layer, added with `add_loss`.

Subclass it, write `compute_loss(inputs, mask=None)`, call it on the tensors
the loss needs, and compile with an optimizer only:

    class CrossEntropy(Loss):
        def compute_loss(self, inputs, mask=None):
            y_true, y_mask, y_pred = inputs
            ...
            return loss                      # a scalar

    output = CrossEntropy(2)(model.inputs + model.outputs)   # returns inputs[2]
    model = keras.Model(model.inputs, output)
    model.compile(optimizer=keras.optimizers.Adam(1e-5))     # no loss=
    model.fit(generator.forfit(), steps_per_epoch=len(generator))  # x only, or (x, None)

It trains the same way on JAX, PyTorch and TensorFlow: Keras 3 collects the
`add_loss` terms of a functional model's forward pass inside `fit`. `mask` is
the list of the inputs' Keras masks (None for an input without one, and None
when no input has a mask), as in bert4keras.
"""

import keras

from kerasformers.saving import register


@register
class Loss(keras.layers.Layer):
    """A layer that adds `compute_loss(inputs, mask)` to the model's loss and
    returns its inputs (`output_axis=None`), `inputs[output_axis]` (an int) or
    `[inputs[i] for i in output_axis]` (a list).

    The loss is added as given (a scalar; a tensor is summed by Keras, as
    in Keras 2 it was averaged - return a scalar to be unambiguous). The
    logged `loss` in `fit` is this value plus any compiled loss and
    regularisers.

    >>> import keras, numpy as np
    >>> from keras import ops
    >>> class MeanSquare(Loss):
    ...     def compute_loss(self, inputs, mask=None):
    ...         y_true, y_pred = inputs
    ...         return ops.mean(ops.square(y_true - y_pred))
    >>> x, y = keras.Input((3,)), keras.Input((1,))
    >>> y_pred = keras.layers.Dense(1)(x)
    >>> model = keras.Model([x, y], MeanSquare(output_axis=1)([y, y_pred]))
    >>> model.compile(keras.optimizers.SGD(0.1))
    >>> data = np.random.RandomState(0).randn(16, 3).astype("float32")
    >>> target = data.sum(axis=1, keepdims=True)
    >>> history = model.fit([data, target], epochs=5, verbose=0)
    >>> history.history["loss"][-1] < history.history["loss"][0]
    True
    """

    def __init__(self, output_axis=None, **kwargs):
        super().__init__(**kwargs)
        self.output_axis = output_axis
        self.supports_masking = True

    def call(self, inputs, mask=None):
        loss = self.compute_loss(inputs, mask)
        self.add_loss(loss)
        return self._select(inputs)

    def compute_loss(self, inputs, mask=None):
        """The loss to add, from the layer's inputs (and their Keras masks); override."""
        raise NotImplementedError(f"{type(self).__name__} must define compute_loss(inputs, mask)")

    def _select(self, values):
        if self.output_axis is None:
            return values
        if isinstance(self.output_axis, (list, tuple)):
            return [values[i] for i in self.output_axis]
        return values[self.output_axis]

    def compute_output_shape(self, input_shape):
        return self._select(input_shape)

    def compute_output_spec(self, inputs, mask=None):
        # the selected inputs themselves: their dtypes too (token ids stay integers)
        return keras.tree.map_structure(
            lambda t: keras.KerasTensor(t.shape, dtype=t.dtype), self._select(inputs)
        )

    def compute_mask(self, inputs, mask=None):
        if mask is None:
            return None
        return self._select(mask)

    def get_config(self):
        config = super().get_config()
        config["output_axis"] = self.output_axis
        return config


__all__ = ["Loss"]
