Keystorectl.runMain()
