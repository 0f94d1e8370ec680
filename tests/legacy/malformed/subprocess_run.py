import subprocess as sp
sp.run(["echo", "hacked"])
