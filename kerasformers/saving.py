"""The one registration every kerasformers object that `.keras` files name goes
through (layers, losses, metrics, optimizers, activations): `package="kerasformers"`,
so a saved model reloads with `keras.saving.load_model` once kerasformers is imported.

>>> import keras
>>> @register
... class Twice(keras.layers.Layer):
...     def call(self, x):
...         return 2 * x
>>> keras.saving.get_registered_name(Twice)
'kerasformers>Twice'
"""

import keras

register = keras.saving.register_keras_serializable(package="kerasformers")
