"""Survey geometry and the synthetic sky: the DR10 brick grid and a simulator of DR10-like coadd bricks."""
