"""tf.data conversion of a `kerasformers.data.DataGenerator` (imports tensorflow)."""

import tensorflow as tf


def to_dataset(data_generator, types, shapes, names=None, padded_batch=False):
    """`DataGenerator.to_dataset`: a `tf.data.Dataset` of the samples that
    ``data_generator.__iter__`` yields one by one (passes forever, shuffled), batched by
    tf.data to ``data_generator.batch_size`` (``padded_batch`` pads to `shapes`).  With
    `names`, samples become dicts keyed by input names."""
    if names is None:
        generator = data_generator.forfit
    else:
        if isinstance(names, str):

            def wraps(k, v):
                return {k: v}
        elif isinstance(names[0], str):

            def wraps(k, v):
                return dict(zip(k, v))
        else:

            def wraps(k, v):
                return tuple(dict(zip(i, j)) for i, j in zip(k, v))

        def generator():
            for d in data_generator.forfit():
                yield wraps(names, d)

        types = wraps(names, types)
        shapes = wraps(names, shapes)

    if padded_batch:
        dataset = tf.data.Dataset.from_generator(generator, output_types=types)
        return dataset.padded_batch(data_generator.batch_size, shapes)
    dataset = tf.data.Dataset.from_generator(generator, output_types=types, output_shapes=shapes)
    return dataset.batch(data_generator.batch_size)
