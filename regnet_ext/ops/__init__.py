"""Python face of the regnet_ext operators: input checks, autograd and fake kernels.

Importing this module loads the compiled library and fails with a clear message if it is
missing. Models do not import it: they run on stock PyTorch ops without the extension."""
from .._extension import require

require()

from .conv_bn_act import conv_bn_act  # noqa: E402
from .conv_pair import conv_pair_relu  # noqa: E402
from .cpu_autotune import (clear_cpu_conv_autotune, cpu_conv_autotune_enabled,  # noqa: E402
                           cpu_conv_autotune_excluded, cpu_conv_autotune_excluding, cpu_conv_autotune_records,
                           cpu_conv_kernel_names)
from .pool_linear import pool_linear  # noqa: E402
from .squeeze_excite import squeeze_excite, squeeze_excite_  # noqa: E402

__all__ = ["conv_bn_act", "conv_pair_relu", "pool_linear", "squeeze_excite", "squeeze_excite_",
           "cpu_conv_autotune_enabled", "cpu_conv_autotune_records", "clear_cpu_conv_autotune",
           "cpu_conv_autotune_excluding", "cpu_conv_autotune_excluded", "cpu_conv_kernel_names"]
