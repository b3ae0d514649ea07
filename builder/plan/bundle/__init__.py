"""Offline bundles (make.py makes one; apt.py resolves its packages, images.py its images, references.py parses
image names): every package and container image a node needs, made on the build host and carried on its card.

    BUNDLE_DIR/bundle.json     what the bundle holds: Kubernetes release, platform, each .deb and image with its
                               SHA-256 (firstboot/bundle.py reads it at first boot)
    BUNDLE_DIR/debs/*.deb      the exact closure apt resolved for this image (apt.py): runtime + kube packages,
                               each with its data.tar decompressed (debs.py: the node's dpkg only copies); none
                               when the host's dpkg unpacked them into the image (unpack.py: the node configures)
    BUNDLE_DIR/images/*.tar    one OCI archive of every image for the node's platform (images.py: one import)

The host keeps what it fetched under CACHE/bundles/ and reuses it, so a warm cache builds with no network:

    packages/KEY/RELEASE/      the .debs and packages.json, KEY = the image's dpkg status, sources, keyrings, pins,
                               architecture and the packages asked for; RELEASE = the Kubernetes patch (1.31.4)
    images/NAME.oci.tar(.json) one archive per image and platform, with its digests
    images/sets/images-KEY.oci.tar(.json)  the archives a bundle needs, as one (KEY: their digests)

An entry appears by rename only when complete, and is checked against its recorded SHA-256s each time it is used: a
cut or tampered file is fetched again, never used.
"""
