#!/bin/sh
echo "install_consumer test not written yet"; exit 1
