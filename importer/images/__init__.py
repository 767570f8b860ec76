"""Images on the offline host: verify a bundle, load it into the engine (either image store), push it to an
internal registry, take an inventory, and keep the host's trust state (keys, anti-rollback sequences).

Nothing here touches a Toolkit: the upgrade machinery is :mod:`importer.upgrade`. Example::

    from importer.images.verify import verify_bundle
    from importer.images.load import plan_load, execute

Each module's own docstring shows its calls:

    bundle = verify_bundle(BundleFolders(Path("/media/usb")), trusted, state, now=utc_now())
"""
