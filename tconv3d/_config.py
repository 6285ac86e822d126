"""Config plumbing shared by :mod:`~tconv3d.initializers`, :mod:`~tconv3d.regularizers` and
:mod:`~tconv3d.constraints`: the ``get_config``/``from_config`` base and the Keras-style
``{"class_name": ..., "config": ...}`` (de)serialization helpers.

``kind`` is the word used in error messages (``"initializer"``, ``"regularizer"``, ...).
"""


class Configurable:
    """Base with ``get_config``/``from_config`` and a ``Name(arg=value, ...)`` repr."""

    def get_config(self):
        """Return the constructor's arguments, as :meth:`from_config` takes them.

        Returns
        -------
        dict
            ``{argument name: value}``; empty for a class without arguments.

        Examples
        --------
        >>> from tconv3d.initializers import RandomNormal
        >>> RandomNormal(stddev=0.1, seed=1).get_config()
        {'mean': 0.0, 'stddev': 0.1, 'seed': 1}
        """
        return {}

    @classmethod
    def from_config(cls, config):
        """Make an instance from :meth:`get_config`'s dict.

        Parameters
        ----------
        config : dict
            The constructor's arguments by name.

        Returns
        -------
        object
            ``cls(**config)``.

        Raises
        ------
        TypeError
            If ``config`` has an argument the constructor does not take.
        ValueError
            If the constructor refuses a value.

        Examples
        --------
        >>> from tconv3d.regularizers import L2
        >>> L2.from_config({"l2": 0.5})
        L2(l2=0.5)
        """
        return cls(**config)

    def __repr__(self):
        args = ", ".join(f"{k}={v!r}" for k, v in self.get_config().items())
        return f"{type(self).__name__}({args})"


def _article(kind):
    return "An" if kind[:1].lower() in "aeiou" else "A"


def as_dict(obj):
    """``{"class_name": type name, "config": obj.get_config()}``."""
    return {"class_name": type(obj).__name__, "config": obj.get_config()}


def is_keras_object(obj, names):
    """A Keras object of a class we mirror (mapped through its config, keeping its numbers)."""
    cls = type(obj)
    return (cls.__module__.split(".")[0] == "keras" and cls.__name__ in names
            and hasattr(obj, "get_config"))


def from_name(name, names, kind, expected):
    """``names[name]()``, else a ValueError listing ``names`` and then ``expected``."""
    if name not in names:
        raise ValueError(f"Unknown {kind} {name!r}. Expected one of {sorted(names)}, "
                         f"{expected}.")
    return names[name]()


def serialize(obj, classes):
    """:func:`as_dict` of ``obj`` if its type is in ``classes``; ``obj`` itself otherwise."""
    return as_dict(obj) if type(obj) in classes else obj


def deserialize(config, names, kind, build=None):
    """Object from a ``{"class_name": ..., "config": ...}`` dict.

    Parameters
    ----------
    config : dict
    names : dict
        ``class_name`` -> entry; unknown names raise a ValueError.
    kind : str
        Word for the error messages.
    build : callable or None, default=None
        ``build(entry, params)``; ``None`` means ``entry.from_config(params)``.
    """
    if not isinstance(config, dict) or "class_name" not in config:
        raise ValueError(f"{_article(kind)} {kind} config must be a dict with a 'class_name' "
                         f"key, got {config!r}.")
    name = config["class_name"]
    if name not in names:
        raise ValueError(f"Unknown {kind} class_name {name!r}. Expected one of "
                         f"{sorted(names)}.")
    params = dict(config.get("config") or {})
    return names[name].from_config(params) if build is None else build(names[name], params)
