#!/usr/bin/python3
"""Writes system.xml for alanine dipeptide (ACE-ALA-NME) in OBC implicit solvent.

The setting of the Boltzmann-generator literature for this molecule (Tan et al. 2025;
Rehman et al. 2026): amber99sbildn + amber99_obc, NoCutoff, no constraints, no rigid water.
Run with Debian's python3-simtk (OpenMM): /usr/bin/python3 data/alanine_dipeptide/make_system.py
"""
import os
import sys

try:
    import openmm
    from openmm import app
except ImportError:  # OpenMM < 7.6 names
    from simtk import openmm
    from simtk.openmm import app

here = os.path.dirname(os.path.abspath(__file__))
pdb = app.PDBFile(os.path.join(here, "ala2.pdb"))
ff = app.ForceField("amber99sbildn.xml", "amber99_obc.xml")
system = ff.createSystem(pdb.topology, nonbondedMethod=app.NoCutoff, constraints=None,
                         rigidWater=False)
with open(os.path.join(here, "system.xml"), "w") as f:
    f.write(openmm.XmlSerializer.serialize(system))
print("openmm", openmm.version.version, "atoms", system.getNumParticles(),
      "forces", [system.getForce(i).__class__.__name__ for i in range(system.getNumForces())],
      file=sys.stderr)
