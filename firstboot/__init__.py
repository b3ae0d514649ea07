"""First-boot join: the device agent, and (in `endpoint/`) the master's token endpoint.

The top-level modules are copied verbatim into every image at /usr/lib/pi-image/firstboot/ and run on the device's
own python3, so they use the standard library only and must run on Python 3.6 (Jetson Nano L4T = Ubuntu 18.04).
Worker images carry only these; the `endpoint` sub-package is for the master. Run them as modules from the
package's parent directory:

    cd /usr/lib/pi-image && python3 -m firstboot.agent      # device side
    cd /usr/lib/pi-image && python3 -m firstboot.endpoint   # master side (or `pi-image token-server`)
"""
