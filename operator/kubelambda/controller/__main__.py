from kubelambda.controller.main import main

main()
