"""First-boot join: the device agent and the master's token endpoint.

This package is copied verbatim into every image at /usr/lib/pi-image/firstboot/ and runs on the device's own
python3, so it uses the standard library only and must run on Python 3.6 (Jetson Nano L4T = Ubuntu 18.04).
Run its programs as modules from the package's parent directory:

    cd /usr/lib/pi-image && python3 -m firstboot.agent     # device side
    cd /usr/lib/pi-image && python3 -m firstboot.tokend    # master side (or `pi-image token-server`)
"""
