module kubelambda.io/e2e/bootstrap

go 1.22
