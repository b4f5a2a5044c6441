import keras
import numpy as np

import bnlib

keras.utils.set_random_seed(0)
rng = np.random.default_rng(0)
dense, bn = keras.layers.Dense(4), keras.layers.BatchNormalization(
    gamma_initializer=keras.initializers.RandomUniform(0.5, 2.0),
    beta_initializer=keras.initializers.RandomUniform(-1.0, 1.0))
for _ in range(20):                                             # moving statistics
    bn(dense((3 * rng.normal(size=(16, 5)) + 2).astype("float32")), training=True)

W, b = bnlib.fold_batchnorm(                                    # kernel is (in, out)
    dense.kernel.numpy(), dense.bias.numpy(), bn.gamma.numpy(), bn.beta.numpy(),
    bn.moving_mean.numpy(), bn.moving_variance.numpy(), eps=bn.epsilon, out_axis=-1)
folded = keras.layers.Dense(4)
folded.build((None, 5))
folded.set_weights([W, b])

x = (3 * rng.normal(size=(1000, 5)) + 2).astype("float32")
diff = np.abs(bn(dense(x), training=False).numpy() - folded(x).numpy()).max()
print(f"max |Dense+BN (inference) - folded Dense|, float32: {diff:.1e}")
