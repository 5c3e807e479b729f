"""hil: simulated Modbus devices (register maps, device behaviour, loopback TCP servers)."""
