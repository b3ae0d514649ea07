#!/bin/bash
# Sample stand-in for L4T's first-boot wizard launcher: runs oem-config on the console, then removes itself
# (see nvidia-l4t-oem-config) and switches the default target to graphical.target.
/usr/sbin/nv-oem-config-firstboot
