"""Data for NVAE: the registry of dataset facts and the `tf.data` pipelines.

Example:

```python
from keras_nvae import data

train = data.make_dataset("digits", "train", batch_size=32)
```
"""

from keras_nvae.data import registry
from keras_nvae.data.image_files import BadImageFileError
from keras_nvae.data.pipeline import AUTOTUNE
from keras_nvae.data.pipeline import DatasetNotAvailableError
from keras_nvae.data.pipeline import digits_arrays
from keras_nvae.data.pipeline import dynamic_binarize
from keras_nvae.data.pipeline import from_numpy
from keras_nvae.data.pipeline import load_digits
from keras_nvae.data.pipeline import load_image_folder
from keras_nvae.data.pipeline import load_tfds
from keras_nvae.data.pipeline import make_dataset
