# Rewrites apache-conf/seaside-pool.conf for one installation: the value of
# every "Define NAME value" line whose NAME is in the environment is replaced
# by that variable's value; with USE_LINES set, the "Use SeasideVM" lines are
# replaced by it. Every other line is copied as it is.
#   NAME=value ... awk -f scripts/lib/fill-defines.awk apache-conf/seaside-pool.conf
$1 == "Define" && ($2 in ENVIRON) {
  v = ENVIRON[$2]
  if (v ~ /[ \t]/) v = "\"" v "\""
  print "Define " $2 " " v
  next
}
$1 == "Use" && $2 == "SeasideVM" && ("USE_LINES" in ENVIRON) {
  if (!done) printf "%s", ENVIRON["USE_LINES"]
  done = 1
  next
}
{ print }
