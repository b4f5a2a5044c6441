import keras
import numpy as np

rng = np.random.default_rng(0)
x = (5 * rng.normal(size=(32, 4)) + 12).astype("float32")
bn = keras.layers.BatchNormalization()
bn(x, training=True)                    # "pretraining": the moving statistics move

bn.trainable = False                    # freeze, as when fine-tuning
before = {w.name: w.numpy().copy() for w in bn.weights}
out_train = bn(x, training=True).numpy()
out_infer = bn(x, training=False).numpy()
print("trainable weights after freezing:", [w.name for w in bn.trainable_weights])
print("max |training=True - training=False|, frozen:",
      np.abs(out_train - out_infer).max())
print("weights changed by the training=True call:",
      [w.name for w in bn.weights if not np.array_equal(before[w.name], w.numpy())])

bn.trainable = True                     # unfrozen, the same call uses batch statistics
print("max |training=True - training=False|, unfrozen:",
      np.abs(bn(x, training=True).numpy() - out_infer).max())
