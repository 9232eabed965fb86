"""SYNTHETIC demo LMM with a planted visual attention sink (see ``analysis.demo.build``)."""
