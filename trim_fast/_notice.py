"""Notices a user must see even when their program configured no logging (network use)."""
import logging
import warnings


def _has_real_handler(logger: logging.Logger) -> bool:
    node = logger
    while node is not None:
        if any(not isinstance(h, logging.NullHandler) for h in node.handlers):
            return True
        node = node.parent if node.propagate else None
    return False


def must_see(logger: logging.Logger, msg: str, *args) -> None:
    """A WARNING on ``logger``; where nothing would show it (the package's NullHandler and no
    handler configured by the program), also a Python warning, which reaches stderr."""
    logger.warning(msg, *args)
    if not _has_real_handler(logger):
        warnings.warn(msg % args if args else msg, stacklevel=3)
