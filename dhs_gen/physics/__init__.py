"""Physics kernels: lens mass model, PSFs, and the render engines that turn a lens + source into pixels."""
