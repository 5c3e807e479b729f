"""hil: the simulated charge site (hardware-in-the-loop rig) for evsite.

Simulated Modbus devices (an Eastron SDM630 grid meter, Alfen NG9xx sockets) served on loopback
TCP, driven by a deterministic model of the building load and the EVs, scripted by scenario
files. The simulators are written from the register reference on their own: nothing here
imports the product's drivers or controller, so a wrong address cannot pass on both sides.
"""
