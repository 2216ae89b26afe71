"""Forward Euler, the scheme behind ResNet (He et al. 2016)."""

import odezoo

ODEZOO_PLUGIN_API = 1


@odezoo.register_scheme("euler")
class Euler(odezoo.Scheme):
    """Forward Euler: y_{n+1} = y_n + h·f(t_n, y_n). Order 1, one field.

    Network form: with h = 1 and f a residual branch, this is the ResNet block
    y + F(y) (He et al., "Deep Residual Learning for Image Recognition",
    CVPR 2016), so ``block_step`` is ``step``.
    """

    order, num_fields = 1, 1

    def step(self, fields, t, y, h):
        return y + h * fields[0](t, y)
