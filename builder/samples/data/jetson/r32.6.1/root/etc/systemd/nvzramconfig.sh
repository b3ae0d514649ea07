#!/bin/bash
# Sample stand-in for L4T's zram setup: one zram swap device per CPU, half of RAM in total.
NRDEVICES=$(grep -c ^processor /proc/cpuinfo | sed 's/^0$/1/')
modprobe zram num_devices=${NRDEVICES}
