"""hil: simulated Modbus devices (registers, behaviour) served on loopback TCP and pty RTU lines."""
