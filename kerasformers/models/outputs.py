"""`layer_outputs`: every output of a layer that a model calls more than once.

A Keras layer called N times in a functional model (ALBERT's one shared block: its
``Transformer-FeedForward-Norm`` runs once per layer) has N outputs.  Keras 2 refused
``layer.output`` for such a layer and offered ``layer.get_output_at(i)``; Keras 3 dropped
``get_output_at`` and ``layer.output`` silently returns the *first* call's output.  So in
kerasformers ``model.get_layer(name).output`` is the first block's output for a shared
layer (the rule of Keras 3), and `layer_outputs(model, name)` returns all of them, in call
order (bert4keras' ``get_output_at(i)`` is ``layer_outputs(model, name)[i]``).
"""

__all__ = ["layer_outputs"]


def layer_outputs(model, name):
    """The outputs of every call of the layer `name` in the functional `model`, in order.

    For a layer called once (BERT's ``Transformer-3-FeedForward-Norm``) a list of one;
    for ALBERT's shared ``Transformer-FeedForward-Norm`` one output per block.  Calls of
    the layer in other models (a layer shared between models) are not included.

    Args:
        model: a functional Keras model (what `build_transformer_model` returns).
        name: the layer's name.

    Returns:
        a list of Keras tensors (a call with several outputs gives a list), ready for
        ``keras.Model(model.inputs, outputs)``.

    Raises:
        ValueError: `model` has no layer `name` (the error names the closest layers).
        TypeError: `model` is not a functional model.

    >>> import keras, numpy as np
    >>> from kerasformers import build_transformer_model
    >>> from kerasformers.models import layer_outputs
    >>> albert = build_transformer_model(None, model="albert", vocab_size=50, hidden_size=16,
    ...                                  embedding_size=8, num_hidden_layers=3,
    ...                                  num_attention_heads=2, intermediate_size=32)
    >>> blocks = layer_outputs(albert, "Transformer-FeedForward-Norm")
    >>> len(blocks), blocks[-1] is albert.output   # the last block's output is the model's
    (3, True)
    >>> every = keras.Model(albert.inputs, blocks)
    >>> [o.shape for o in every.predict([np.array([[2, 5, 7]]), np.zeros((1, 3))], verbose=0)]
    [(1, 3, 16), (1, 3, 16), (1, 3, 16)]
    """
    nodes_in_model = getattr(model, "_nodes", None)
    if nodes_in_model is None or not hasattr(model, "get_layer"):
        raise TypeError(
            f"layer_outputs needs a functional Keras model (keras.Model(inputs, outputs)), "
            f"got {type(model).__name__}"
        )
    names = [layer.name for layer in model.layers]
    if name not in names:
        import difflib

        close = difflib.get_close_matches(name, names, n=3)
        hint = f"; closest: {', '.join(close)}" if close else ""
        raise ValueError(f"the model has no layer named {name!r}{hint}")
    from keras.src.ops.function import make_node_key  # how a functional graph keys nodes

    layer = model.get_layer(name)
    outputs = []
    for index, node in enumerate(layer._inbound_nodes):
        if make_node_key(layer, index) in nodes_in_model:
            tensors = list(node.output_tensors)
            outputs.append(tensors[0] if len(tensors) == 1 else tensors)
    return outputs
